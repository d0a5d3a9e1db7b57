"""The whole training loop on one screen: a GPT on Tiny Shakespeare with the reference ops and AdamW.

    python examples/minimal_train.py                    # 1000 steps: val loss about 1.79
    python examples/minimal_train.py --max_iters 300    # 300 steps: below 2.2 (tests/test_examples.py)

Only the plain reference runs here (minigpt.nn.GPT, minigpt.optim.AdamW: the code you read in
minigpt/), with nothing around it: no fast twins, checkpoints, metrics or data parallelism.
minigpt/train.py is this loop with all of those (the `minigpt train` command).
"""

import argparse

import numpy as np

import minigpt
from minigpt import nn, optim
from minigpt.data import CharTokenizer, get_batch, load_text, train_val_split

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--max_iters", type=int, default=1000, help="training steps")
p.add_argument("--seed", type=int, default=1337, help="seed of the init and the batches")
args = p.parse_args()
batch_size, block_size, eval_iters = 24, 64, 20

text = load_text()  # Tiny Shakespeare, shipped inside minigpt
tokenizer = CharTokenizer.from_text(text)  # one id per distinct character: 65 of them
train_ids, val_ids = train_val_split(tokenizer.encode(text))  # the first 90% to train on, the last 10%
minigpt.manual_seed(args.seed)
rng = np.random.default_rng(args.seed)  # draws the batches
model = nn.GPT(nn.GPTConfig(block_size=block_size, vocab_size=tokenizer.vocab_size, n_layer=1, n_head=4,
                            n_embd=128, bias=False))
matrices = [p for p in model.parameters() if p.ndim >= 2]  # weight decay on these only, as nanoGPT
others = [p for p in model.parameters() if p.ndim < 2]
optimizer = optim.AdamW([{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                        betas=(0.9, 0.99))


@minigpt.no_grad()
def val_loss() -> float:
    """The mean loss over eval_iters random batches of the validation text (no dropout)."""
    model.eval()
    losses = [model(*get_batch(val_ids, batch_size, block_size, rng))[1].item() for _ in range(eval_iters)]
    model.train()
    return float(np.mean(losses))


for it in range(args.max_iters):
    lr = optim.cosine_lr(it, lr=6e-3, min_lr=6e-4, warmup_iters=100, lr_decay_iters=args.max_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if it % 250 == 0:
        print(f"step {it}: val loss {val_loss():.4f}")
    x, y = get_batch(train_ids, batch_size, block_size, rng)  # (B, T) inputs and their next characters
    _, loss = model(x, y)  # forward: the mean cross-entropy of the next character
    optimizer.zero_grad()
    loss.backward()  # every parameter's .grad, by the hand-written backward passes
    optim.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
print(f"step {args.max_iters}: val loss {val_loss():.4f}")
context = np.array([tokenizer.encode("\n")])  # (1, 1)
print(tokenizer.decode(model.generate(context, 200, temperature=0.8, top_k=200)[0]))
