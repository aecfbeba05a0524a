"""Masked-LM training of a small BERT-like Transformer encoder with ragged batches: the workload
run under tools/record.sh so the recorder logs its tensor storages. Random token ids only, nothing
is downloaded; seeded so that a rerun allocates the same sizes in the same order."""

import argparse
import random
import sys

import torch
from torch import nn

VOCAB = 8192
D_MODEL = 256
HEADS = 4
LAYERS = 4
D_FF = 1024
MIN_LEN = 32
MAX_LEN = 192
PAD_ID = 0
MASK_ID = 1
FIRST_WORD_ID = 2
MASK_PROB = 0.15


class EncoderMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD_ID)
        self.pos = nn.Embedding(MAX_LEN, D_MODEL)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, LAYERS, norm=nn.LayerNorm(D_MODEL),
                                             enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Linear(D_MODEL, D_MODEL), nn.GELU(), nn.LayerNorm(D_MODEL))
        # BERT's initialisation: unit-variance embeddings would make the tied logits explode
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids, pad_mask, select):
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        h = self.encoder(self.tok(ids) + self.pos(positions), src_key_padding_mask=pad_mask)
        # vocabulary logits only at the masked positions, as BERT does: a full [tokens x vocab]
        # logit tensor would dwarf everything else the model allocates
        return self.head(h[select]) @ self.tok.weight.t()


def make_batch(rng, min_batch, max_batch):
    """A batch of drawn size whose sequences have drawn lengths, padded to the longest one."""
    batch = rng.randint(min_batch, max_batch)
    width = rng.randint(MIN_LEN, MAX_LEN)
    lengths = [width] + [rng.randint(width // 2, width) for _ in range(batch - 1)]
    ids = torch.randint(FIRST_WORD_ID, VOCAB, (batch, width))
    pad_mask = torch.arange(width).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    ids.masked_fill_(pad_mask, PAD_ID)
    select = (torch.rand(batch, width) < MASK_PROB) & ~pad_mask
    select[:, 0] |= ~select.any(dim=1)  # every sequence has at least one prediction target
    targets = ids[select]
    ids = ids.masked_fill(select, MASK_ID)
    return ids, pad_mask, select, targets


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=16, help="training steps (default 16)")
    parser.add_argument("--eval-steps", type=int, default=3, help="no_grad steps after training")
    parser.add_argument("--seed", type=int, default=1234, help="seed of every RNG (default 1234)")
    args = parser.parse_args()

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)

    model = EncoderMLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()

    model.train()
    for step in range(args.steps):
        ids, pad_mask, select, targets = make_batch(rng, 4, 16)
        loss = loss_fn(model(ids, pad_mask, select), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        print(f"step {step} batch {ids.shape[0]} len {ids.shape[1]} loss {loss.item():.3f}",
              file=sys.stderr)

    model.eval()
    with torch.no_grad():
        for step in range(args.eval_steps):
            ids, pad_mask, select, targets = make_batch(rng, 16, 48)
            loss = loss_fn(model(ids, pad_mask, select), targets)
            print(f"eval {step} batch {ids.shape[0]} len {ids.shape[1]} loss {loss.item():.3f}",
                  file=sys.stderr)


if __name__ == "__main__":
    main()
