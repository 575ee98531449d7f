"""w4s: Weak-for-Strong harnessing of strong executor LLMs by a trained weak meta-agent."""

__version__ = "0.1.0"
