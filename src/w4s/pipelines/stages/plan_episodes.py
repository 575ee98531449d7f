"""Stage: the (task, episode) pairs a training pipeline collects, for its ``ParallelFor``."""


def run(tasks: list, episodes: int) -> list:
    from w4s.errors import ConfigError
    from w4s.tasks import task_names

    unknown = [t for t in tasks if t not in task_names()]
    if unknown or not tasks:
        raise ConfigError(f"unknown tasks {unknown or tasks}; use some of {', '.join(task_names())}")
    if episodes < 1:
        raise ConfigError(f"episodes={episodes}: collect at least 1 episode per task")
    return [f"{task}/{episode}" for task in tasks for episode in range(episodes)]
