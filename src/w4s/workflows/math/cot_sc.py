"""Chain of thought with self-consistency: five sampled solutions, majority vote on the answer."""

from collections import Counter


def solver(agent, task):
    replies = agent.call_llm(
        [{"role": "user", "content": f"{task}\n\nThink step by step, then end with 'The answer is N.'"}],
        temperature=0.8,
        num_of_response=5,
        agent_role="a careful math tutor",
    )
    answers = [agent.extract_answer_str(reply) for reply in replies]
    return {"answer": Counter(answers).most_common(1)[0][0]}
