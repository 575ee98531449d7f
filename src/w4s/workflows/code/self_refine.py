"""Self-refine for code: write the function, review it for bugs, rewrite it once if needed."""


def solver(agent, task):
    ask = f"{task}\n\nGive the whole function (and any imports it needs) in one ```python block."
    code = agent.extract_code_block(
        agent.call_llm(ask, temperature=0.0, agent_role="an expert Python programmer")[0]
    )
    review = agent.call_json_format_llm(
        f"Task:\n{task}\n\nCode:\n```python\n{code}\n```\nLook for bugs and unhandled edge cases.",
        temperature=0.0,
        num_of_response=1,
        agent_role="a meticulous code reviewer",
        return_dict_keys=["feedback", "correct"],
        instructions="Set correct to true only if the code is right for every input the task allows.",
    )[0]
    if str(review.get("correct")).lower() != "true":
        fixed = agent.call_llm(
            f"{ask}\n\nPrevious attempt:\n```python\n{code}\n```\nReview:\n{review.get('feedback')}\n\n"
            "Write the corrected function.",
            temperature=0.0,
            agent_role="an expert Python programmer",
        )[0]
        code = agent.extract_code_block(fixed)
    return {"answer": code}
