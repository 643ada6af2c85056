"""The distillation objectives side by side on one rollout: which divergence, over which vocabulary.

Every combination of divergence (forward KL, reverse KL, JSD 0.5) and vocabulary (full, the
teacher's top-k + tail, the sampled token + rest) is computed on the *same* student rollout and
the same teacher scores, with the training code's own pieces (`score_teacher`,
`logprob_divergence`, `sequence_mean`, the SDFT loss mask): for each, the loss, the norm of its gradient
on the adapter, that gradient's cosine similarity to the paper's objective's, and where it pushes
hardest (the norm of its gradient on the student's logits, per completion token).

Which setting is whose:
    paper        forward KL over the full vocabulary (alpha 0, vocab 'full'): the paper's text writes a
                 reverse KL, but its authors state that every reported result used forward KL
    TRL default  `distillation_alpha` 0.5 (JSD) on `topk_logits` 100 (TRL 1.16 SDFTTrainer); TRL takes
                 the *student's* top-100 and renormalises it (no tail bucket by default), where our
                 'topk' takes the *teacher's* top-k plus a tail bucket: the closest row here is JSD(0.5), top-k
    ours         sdft-kit's default LossConfig: alpha 0, vocab 'full', the paper's
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .batch import Completions, completion_logits
from .config import VOCABS, LossConfig, RolloutConfig, TeacherConfig
from .data import Example
from .demos import student_prompt, teacher_prompt
from .losses import log_probs, logprob_divergence, sequence_mean
from .models import lora_parameters
from .rollout import rollout
from .scoring import score_teacher
from .teachers import Teacher, make_teacher
from .methods import SDFT

DIVERGENCES = {"forward KL": 0.0, "reverse KL": 1.0, "JSD(0.5)": 0.5}  # name -> alpha (losses.divergence)
PAPER = (0.0, "full")
TRL_DEFAULT = (0.5, "topk")
TOP_POSITIONS = 3  # completion tokens listed per objective as pushed hardest


@dataclass
class ObjectiveFigures:
    """One objective on the rollout."""

    divergence: str  # 'forward KL', 'reverse KL' or 'JSD(0.5)'
    alpha: float
    vocab: str  # 'full', 'topk' or 'sampled'
    loss: float
    grad_norm: float  # of the loss's gradient on the adapter's parameters
    cosine: float  # of that gradient to the paper's (forward KL, full vocabulary)
    push: list[float]  # per completion token: norm of the loss's gradient on the student's logits there
    hardest: list[dict]  # the TOP_POSITIONS tokens with the largest push: position, token, push, raised (token)
    tags: list[str] = field(default_factory=list)  # 'paper', 'TRL default', 'ours'

    @property
    def name(self) -> str:
        return f"{self.divergence}, {self.vocab}"


@dataclass
class ObjectiveComparison:
    """The objectives on one rollout, with the tokens they were computed on."""

    tokens: list[str]  # the rollout's completion tokens (first row)
    counted: list[bool]  # whether each is in the loss (skip_first leaves the first ones out)
    topk: int
    skip_first: int
    results: list[ObjectiveFigures]

    def get(self, divergence: str, vocab: str) -> ObjectiveFigures:
        return next(r for r in self.results if r.divergence == divergence and r.vocab == vocab)

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [{**asdict(r), "name": r.name} for r in self.results]}

    def table(self) -> str:
        """One line per objective: loss, gradient norm, cosine to the paper's, the tokens pushed hardest."""
        lines = [f"{'objective':22}{'loss':>9}{'grad norm':>11}{'cos to paper':>14}   tokens pushed hardest "
                 "(push; token raised most there)"]
        for r in self.results:
            hardest = ", ".join(f"{h['token']!r} ({h['push']:.3f}; {h['raised']!r})" for h in r.hardest)
            tags = f"  [{', '.join(r.tags)}]" if r.tags else ""
            lines.append(f"{r.name:22}{r.loss:9.4f}{r.grad_norm:11.4f}{r.cosine:14.3f}   {hardest}{tags}")
        lines.append(f"{len(self.tokens)} completion tokens, the first {self.skip_first} left out of every loss; "
                     f"top-k = the teacher's top {self.topk} + a tail bucket; sampled = the sampled token + the rest.")
        lines.append("paper: forward KL, full vocabulary (the authors: all reported results). TRL default: JSD(0.5) "
                     "on the student's top-100, renormalised (closest row: JSD(0.5), topk). ours: LossConfig's default.")
        return "\n".join(lines)

    def figure(self):
        """A heatmap: objectives x completion tokens, each row's push scaled to its own maximum (plotly)."""
        import plotly.graph_objects as go

        rows = [[p / max(max(r.push), 1e-12) for p in r.push] for r in self.results]
        labels = [f"{t!r}" if counted else f"({t!r})" for t, counted in zip(self.tokens, self.counted)]
        fig = go.Figure(go.Heatmap(z=rows, x=list(range(len(labels))), y=[r.name for r in self.results],
                                   colorscale="Blues", zmin=0, zmax=1, customdata=[labels] * len(rows),
                                   hovertemplate="%{y}<br>token %{x}: %{customdata}<br>push / row max %{z:.2f}"
                                                 "<extra></extra>"))
        fig.update_layout(title="Where each objective pushes the student (gradient norm on the logits, per token; "
                                "each row scaled to its maximum; skipped tokens in parentheses)",
                          xaxis={"tickvals": list(range(len(labels))), "ticktext": labels, "tickangle": -60},
                          height=140 + 28 * len(rows), margin={"l": 140, "r": 20, "t": 60, "b": 120})
        return fig


def _tags(alpha: float, vocab: str, ours: LossConfig) -> list[str]:
    return ([name for name, setting in (("paper", PAPER), ("TRL default", TRL_DEFAULT)) if setting == (alpha, vocab)]
            + (["ours"] if (ours.alpha, ours.vocab) == (alpha, vocab) else []))


def compare_objectives(model, tokenizer, teacher: Teacher, batch: Completions, *, topk: int = 100, skip_first: int = 3,
                       ours: LossConfig | None = None) -> ObjectiveComparison:
    """Every divergence x vocabulary on one batch of rollouts (with teacher prompts), as the trainer computes it.

    The student's logits are computed once, with gradient; each objective's loss is then reduced
    exactly as in training (`logprob_divergence`, `sequence_mean` over the SDFT loss mask) and
    differentiated with `torch.autograd.grad`, so the model's `.grad` fields are left untouched.
    ours: the loss settings to tag as 'ours' (default: LossConfig()).
    """
    ours = ours or LossConfig()
    mask = SDFT.loss_mask(batch, LossConfig(skip_first=skip_first))
    params = list(lora_parameters(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters: wrap it with add_lora() first")
    teachers = {vocab: score_teacher(teacher, batch, LossConfig(vocab=vocab, topk=topk)) for vocab in VOCABS}
    logits = completion_logits(model, batch.prompt_ids, batch.prompt_mask, batch)
    logprobs = log_probs(logits, batch.temperature)
    first = batch.completion_ids[0][batch.completion_mask[0].bool()]
    tokens = [tokenizer.decode([int(i)]) for i in first]
    found = []
    for divergence, alpha in DIVERGENCES.items():
        for vocab in VOCABS:
            scores = teachers[vocab]
            per_token = logprob_divergence(logprobs, scores.logprobs, batch.completion_ids, alpha=alpha, vocab=vocab,
                                           teacher_indices=scores.indices)
            loss = sequence_mean(per_token, mask)
            logit_grad, *param_grads = torch.autograd.grad(loss, [logits, *params], retain_graph=True)
            push = logit_grad[0, :len(tokens)].float().norm(dim=-1)
            hardest = [{"position": int(i), "token": tokens[int(i)], "push": float(push[i]),
                        # gradient descent moves the logits against the gradient: the most negative rises most
                        "raised": tokenizer.decode([int(logit_grad[0, i].argmin())])}
                       for i in push.argsort(descending=True)[:TOP_POSITIONS] if push[i] > 0]
            found.append((divergence, alpha, vocab, loss.item(), torch.cat([g.flatten() for g in param_grads]).double(),
                          push.tolist(), hardest))
    # float64 for the cosine: a float32 dot product over millions of entries drifts past 1
    reference = next(g for d, a, v, _, g, _, _ in found if (a, v) == PAPER)
    results = [ObjectiveFigures(d, a, v, loss, float(g.norm()),
                                float(F.cosine_similarity(g, reference, dim=0, eps=1e-12)), push, hardest,
                                _tags(a, v, ours))
               for d, a, v, loss, g, push, hardest in found]
    return ObjectiveComparison(tokens, mask[0, :len(tokens)].bool().tolist(), topk, skip_first, results)


def objectives_on_example(model, tokenizer, example: Example, *, template: str = "paper", teacher: str = "base",
                          max_new_tokens: int = 48, topk: int = 100, skip_first: int = 3,
                          seed: int = 0) -> tuple[ObjectiveComparison, Completions]:
    """One student rollout of `example` (temperature 1, seeded), its teacher prompt, and `compare_objectives` on it.

    model: with a LoRA adapter (`add_lora`); teacher: a kind from config.TEACHER_KINDS over it.
    Returns the comparison and the rollout batch.
    """
    torch.manual_seed(seed)
    batch = rollout(model, tokenizer, [student_prompt(tokenizer, example)], RolloutConfig(max_new_tokens=max_new_tokens))
    batch = batch.with_teacher_prompts(tokenizer, [teacher_prompt(tokenizer, example, [example.demonstration],
                                                                  template)])
    comparison = compare_objectives(model, tokenizer, make_teacher(model, TeacherConfig(teacher=teacher)), batch,
                                    topk=topk, skip_first=skip_first)
    return comparison, batch
