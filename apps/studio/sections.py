"""The studio's sections. Those not built yet get a page that says what is coming."""
SECTIONS = {
    "leaderboards": ("Leaderboards", "Evaluation jobs on standard benchmarks (MMLU, GSM8K, HumanEval, …) and "
                     "leaderboards to compare checkpoints."),
    "playground": ("Playground", "Chat with deployed models and give them tools, with agent traces."),
}
