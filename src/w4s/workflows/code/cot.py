"""Chain of thought for code: plan the algorithm first, then write the function."""


def solver(agent, task):
    reply = agent.call_llm(
        f"{task}\n\nFirst explain the algorithm and the edge cases step by step. Then give the whole function "
        "(and any imports it needs) in one ```python block.",
        temperature=0.0,
        agent_role="an expert Python programmer",
    )[0]
    return {"answer": agent.extract_code_block(reply)}
