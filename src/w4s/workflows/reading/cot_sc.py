"""Chain of thought with self-consistency: five sampled solutions, majority vote on the answer."""

from collections import Counter


def solver(agent, task):
    replies = agent.call_llm(
        [
            {
                "role": "user",
                "content": f"{task}\n\nRead the passage carefully, reason step by step, then end with 'Answer: <short answer>'.",
            }
        ],
        temperature=0.8,
        num_of_response=5,
        agent_role="a careful reader",
    )
    answers = [_final(reply) for reply in replies]
    return {"answer": Counter(answers).most_common(1)[0][0]}


def _final(text):
    """The short answer after the last 'Answer:' (DROP answers are spans, dates or numbers)."""
    marker = text.rfind("Answer:")
    answer = text[marker + len("Answer:") :] if marker >= 0 else (text.strip().splitlines() or [""])[-1]
    return answer.strip().strip("*").strip().rstrip(".")
