"""minigpt.nn: Module, the layers, and the models built from them (GPT, the bigram model)."""

from minigpt.nn.bigram import BigramLanguageModel
from minigpt.nn.gpt import GPT, GPTConfig
from minigpt.nn.layers import Dropout, Embedding, LayerNorm, Linear
from minigpt.nn.module import LoadResult, Module, ModuleDict, ModuleList, Parameter

__all__ = ["Module", "ModuleList", "ModuleDict", "Parameter", "LoadResult",
           "Linear", "Embedding", "LayerNorm", "Dropout", "GPTConfig", "GPT", "BigramLanguageModel"]
