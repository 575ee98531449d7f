"""Program of thought: write a Python program that computes the answer, run it, fall back to CoT."""


def solver(agent, task):
    reply = agent.call_llm(
        f"{task}\n\nWrite a Python function `solution()` that returns the final numeric answer. "
        "Reply with the code in one ```python block.",
        temperature=0.0,
        agent_role="a programmer who solves math problems with code",
    )[0]
    result = agent.execute_code(agent.extract_code_block(reply, "solution"), timeout=5)
    if not result.startswith("Error") and result.strip():
        return {"answer": result.strip()}
    fallback = agent.call_llm(
        f"{task}\n\nThink step by step, then end with 'The answer is N.'", temperature=0.0
    )[0]
    return {"answer": agent.extract_answer_str(fallback)}
