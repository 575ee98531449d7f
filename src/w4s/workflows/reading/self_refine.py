"""Self-refine: solve, critique the solution, then revise it (up to two rounds)."""


def solver(agent, task):
    ask = (
        f"{task}\n\nRead the passage carefully, reason step by step, then end with 'Answer: <short answer>'."
    )
    solution = agent.call_llm(ask, temperature=0.0, agent_role="a careful reader")[0]
    for _ in range(2):
        review = agent.call_json_format_llm(
            f"Problem:\n{task}\n\nProposed solution:\n{solution}\n\nCheck every step.",
            temperature=0.0,
            num_of_response=1,
            agent_role="a strict reviewer",
            return_dict_keys=["feedback", "correct"],
            instructions="Set correct to true only if every step and the final answer are right.",
        )[0]
        if str(review.get("correct")).lower() == "true":
            break
        solution = agent.call_llm(
            f"{ask}\n\nA previous attempt:\n{solution}\n\nReviewer feedback:\n{review.get('feedback')}\n\n"
            "Write a corrected solution.",
            temperature=0.0,
            agent_role="a careful reader",
        )[0]
    return {"answer": _final(solution)}


def _final(text):
    """The short answer after the last 'Answer:' (DROP answers are spans, dates or numbers)."""
    marker = text.rfind("Answer:")
    answer = text[marker + len("Answer:") :] if marker >= 0 else (text.strip().splitlines() or [""])[-1]
    return answer.strip().strip("*").strip().rstrip(".")
