"""Chain of thought: reason step by step, then state the final number."""


def solver(agent, task):
    reply = agent.call_llm(
        [{"role": "user", "content": f"{task}\n\nThink step by step, then end with 'The answer is N.'"}],
        temperature=0.0,
        agent_role="a careful math tutor",
    )[0]
    return {"answer": agent.extract_answer_str(reply)}
