"""LLM debate: three solvers answer, read each other's answers for two rounds, then a judge decides."""

from collections import Counter


def solver(agent, task):
    ask = f"{task}\n\nThink step by step, then end with 'The answer is N.'"
    answers = agent.call_llm(ask, temperature=0.7, num_of_response=3, agent_role="a math debater")
    for _ in range(2):
        others = "\n\n".join(f"Debater {i + 1}:\n{a}" for i, a in enumerate(answers))
        answers = agent.call_llm(
            f"{ask}\n\nOther debaters said:\n{others}\n\nConsider their reasoning and give your updated solution.",
            temperature=0.7,
            num_of_response=3,
            agent_role="a math debater",
        )
    votes = Counter(agent.extract_answer_str(a) for a in answers)
    return {"answer": votes.most_common(1)[0][0]}
