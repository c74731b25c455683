"""The toy world: a small LLaVA trained from scratch on synthetic scenes that hallucinates
objects when it describes a scene but answers yes/no questions about it well, the
discriminate-vs-generate gap RLAIF-V exploits, so a CPU run shows the method cutting
hallucination on a laptop CPU (issue 8). An experiment on top of the engine, kept out of it: the
engine names only the grammar splitter, by its backend name "toy-grammar"."""
