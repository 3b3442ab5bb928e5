"""The studio's sections. Those not built yet get a page that says what is coming."""
SECTIONS = {
    "training": ("Training", "Pretraining, continued pretraining, SFT (full, LoRA, QLoRA) and DPO jobs with "
                 "pre-flight checks, live loss curves, checkpoints and resume."),
    "serving": ("Serving", "Deployments with continuous batching, token streaming and an OpenAI-compatible API "
                "with keys and quotas."),
    "leaderboards": ("Leaderboards", "Evaluation jobs on standard benchmarks (MMLU, GSM8K, HumanEval, …) and "
                     "leaderboards to compare checkpoints."),
    "playground": ("Playground", "Chat with deployed models and give them tools, with agent traces."),
}
