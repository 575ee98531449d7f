"""Direct generation: write the function in one go."""


def solver(agent, task):
    reply = agent.call_llm(
        f"{task}\n\nComplete the function. Reply with the whole function (and any imports it needs) in one "
        "```python block.",
        temperature=0.0,
        agent_role="an expert Python programmer",
    )[0]
    return {"answer": agent.extract_code_block(reply)}
