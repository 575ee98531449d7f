"""A tiny random Llama and a word-level tokenizer with a chat template: a real base model in seconds."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "<pad> </s> [UNK] <system> <user> <assistant> good bad answer is the workflow solver def return "
    "task agent write a new one please 1 2 3 4 5 6 7 8 9 0 <eot>"
).split()
CHAT = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="</s>", pad_token="<pad>", unk_token="[UNK]"
    )
    tok.chat_template = CHAT
    return tok


def model(seed: int = 0, layers: int = 2, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config)


def save_base(folder: Path) -> Path:
    model().save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder
