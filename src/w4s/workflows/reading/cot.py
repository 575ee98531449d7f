"""Chain of thought: reason step by step, then state the final number."""


def solver(agent, task):
    reply = agent.call_llm(
        [
            {
                "role": "user",
                "content": f"{task}\n\nRead the passage carefully, reason step by step, then end with 'Answer: <short answer>'.",
            }
        ],
        temperature=0.0,
        agent_role="a careful reader",
    )[0]
    return {"answer": _final(reply)}


def _final(text):
    """The short answer after the last 'Answer:' (DROP answers are spans, dates or numbers)."""
    marker = text.rfind("Answer:")
    answer = text[marker + len("Answer:") :] if marker >= 0 else (text.strip().splitlines() or [""])[-1]
    return answer.strip().strip("*").strip().rstrip(".")
