"""SePiCo's semantic-guided pixel contrast: labels on the feature grid and the pixel-to-class losses.

Paper: Xie, Li, Li, Liu, Huang, Wang, "SePiCo: Semantic-Guided Pixel Contrast for Domain Adaptive Semantic
Segmentation", TPAMI 2023 (arXiv 2204.08808). Reference: BIT-DA/SePiCo
mmseg/models/losses/contrastive_loss.py (downscale_label_ratio, proto_/bank_/dist_contrastive, proto_reg) and
mmseg/models/utils/proto_estimator.py (the statistics and memory bank the losses read; see uda_dist/stats).

Each loss is the mean, over the valid pixels (label != ignore and the class has statistics), of
  ProtoCL  l = -z.mu_y/tau + log sum_c exp(z.mu_c/tau)
  BankCL   l = -(1/|B_y|) sum_{b in B_y} log( e^{z.b/tau} / (e^{z.b/tau} + sum_{c != y} e^{neg_c}) ),
           neg_c = mean_{b' in B_c} z.b'/tau, B_c = the filled slots of class c's memory bank
  DistCL   l = -z.mu_y/tau + log sum_c exp( z.mu_c/tau + sum_a z_a^2 sigma2_{c,a} / (2 tau^2) )
and the regulariser on the branch's mean embedding zbar is
  Reg      L = -(1/(K ln K)) sum_c log softmax_c(zbar.mu_c/tau)      (>= 1, minimum 1 at the uniform softmax)
DistCL is the closed-form upper bound (Jensen, then the Gaussian moment generating function) of the expected
InfoNCE with one key per class k_c ~ N(mu_c, diag sigma2_c): E[-z.k_y/tau + log sum_c e^{z.k_c/tau}]; ProtoCL is
a lower bound of the same expectation (log-sum-exp is convex). The reference computes DistCL as a
cross-entropy over logits that include the positive's variance term and then adds that term back
("jcl_loss"); that is algebraically the expression above.

Differences on purpose:
- class_mask_K: classes without statistics yet (or with an empty bank) are left out of every denominator and
  their pixels are not anchors. The reference keeps their zero means (and each bank's initial zero key) in the
  denominator, a constant e^0 term per missing class.
- Pixels are weighted, never removed: no boolean-mask indexing and no host sync; with no valid pixel a loss is
  an exact 0 that still has a graph (the reference returns a fresh leaf tensor on .cuda()).
- BankCL: the negatives are linear in z, so neg_c = z.(mean of bank_c)/tau is one [N,D]x[D,K] matmul; the
  positives come from [n, K*M] matmuls over chunks of ``chunk`` pixels, each block freed once its own-class
  slots are picked, so memory is O(chunk*K*M + N*M) (N = 51,200, K = 19, M = 200, D = 512: 350 MiB peak for
  forward + backward, 7 s on one CPU thread); the flops, N*K*M*D, are the reference's, which loops over
  classes with boolean indexing. log(e^p / (e^p + S)) is computed as -softplus(log S - p).
- Similarities are computed in z's dtype (statistics are cast to it), log-sum-exp and softplus in at least
  float32 (a bf16 z gives a float32 loss).
- The regulariser's SIGN is flipped with respect to the reference code; see contrast_regularizer.
- downscale_labels counts class shares with one scatter_add into [B, K+1, h*w] instead of average-pooling a
  full-resolution one-hot [B, K+1, H, W].

Legend: B batch, H,W label size, h,w feature grid, N pixels, D feature dim, K classes, M memory-bank slots.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from uda_dist.losses.segmentation import IGNORE_INDEX


def downscale_labels(label_BHW: torch.Tensor, *, size: tuple[int, int], num_classes: int,
                     ignore_index: int = IGNORE_INDEX, min_share: float = 0.75) -> torch.Tensor:
    """Labels on the feature grid [B, h, w]: per (H/h x W/w) cell the most frequent class, ignore being a class
    of its own; kept where its share is >= min_share and it is not ignore, else ignore_index.

    Labels must lie in [0, num_classes) or equal ignore_index; H, W must be integer multiples of h, w."""
    B, H, W = label_BHW.shape
    h, w = size
    if h <= 0 or w <= 0 or H % h or W % w:
        raise ValueError(f"labels of size {H}x{W} do not divide into a {h}x{w} feature grid")
    K, area = num_classes, (H // h) * (W // w)
    slot_BHW = torch.where(label_BHW == ignore_index, K, label_BHW.long())
    row_H = torch.arange(H, device=label_BHW.device) // (H // h)
    col_W = torch.arange(W, device=label_BHW.device) // (W // w)
    index_BL = (slot_BHW * (h * w) + row_H[:, None] * w + col_W[None, :]).reshape(B, H * W)
    counts_BS = torch.zeros(B, (K + 1) * h * w, device=label_BHW.device)
    counts_BS.scatter_add_(1, index_BL, torch.ones(index_BL.shape, device=label_BHW.device))
    top_Bhw, slot_Bhw = counts_BS.view(B, K + 1, h, w).max(dim=1)
    keep_Bhw = (top_Bhw / area >= min_share) & (slot_Bhw != K)
    return torch.where(keep_Bhw, slot_Bhw, ignore_index)


# ---------------------------------------------------------------- shared pieces

def _anchors(label_N: torch.Tensor, class_mask_K: torch.Tensor | None,
             ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(safe_label_N, valid_N): labels with ignore replaced by 0 (safe to gather with) and the anchor mask."""
    valid_N = label_N != ignore_index
    safe_N = torch.where(valid_N, label_N, 0).long()
    if class_mask_K is not None:
        valid_N = valid_N & class_mask_K[safe_N]
    return safe_N, valid_N


def _masked(logits_NK: torch.Tensor, class_mask_K: torch.Tensor | None) -> torch.Tensor:
    """Logits of the classes outside the mask set to the dtype's lowest finite value (exp -> 0, no NaN)."""
    if class_mask_K is None:
        return logits_NK
    return logits_NK.masked_fill(~class_mask_K, torch.finfo(logits_NK.dtype).min)


def _mean(loss_N: torch.Tensor, valid_N: torch.Tensor) -> torch.Tensor:
    """Mean over the valid pixels; an exact 0 (with a graph and zero gradient) when there is none."""
    return torch.where(valid_N, loss_N, 0.0).sum() / valid_N.sum().clamp_min(1).to(loss_N.dtype)


def _similarity(z_ND: torch.Tensor, keys_KD: torch.Tensor, tau: float) -> torch.Tensor:
    """z.k/tau [N, K], the matmul in z's dtype, the result in at least float32."""
    sim_NK = z_ND @ keys_KD.to(z_ND.dtype).T
    return sim_NK.to(torch.promote_types(sim_NK.dtype, torch.float32)) / tau


class _SquaredSimilarity(torch.autograd.Function):
    """(z*z) @ keys.T whose backward is 2 z * (g @ keys), formed in place: neither z*z nor the temporaries of
    autograd's square backward are kept (DistCL forward + backward at N = 51,200, D = 512: 423 -> 230 MiB peak,
    0.63 -> 0.39 s on one CPU thread)."""

    @staticmethod
    def forward(ctx, z_ND: torch.Tensor, keys_KD: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(z_ND, keys_KD)
        return z_ND.square() @ keys_KD.T

    @staticmethod
    def backward(ctx, grad_NK: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        z_ND, keys_KD = ctx.saved_tensors
        grad_z = (grad_NK @ keys_KD).mul_(z_ND).mul_(2.0) if ctx.needs_input_grad[0] else None
        grad_keys = grad_NK.T @ z_ND.square() if ctx.needs_input_grad[1] else None
        return grad_z, grad_keys


def _infonce(pos_logit_N: torch.Tensor, logits_NK: torch.Tensor, class_mask_K: torch.Tensor | None) -> torch.Tensor:
    """-pos + log sum_c exp(logit_c) over the classes in the mask."""
    return torch.logsumexp(_masked(logits_NK, class_mask_K), dim=1) - pos_logit_N


# ---------------------------------------------------------------- losses

def proto_contrast(z_ND: torch.Tensor, label_N: torch.Tensor, mean_KD: torch.Tensor, *, tau: float,
                   class_mask_K: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """ProtoCL: cross-entropy of z against the class means, l = -z.mu_y/tau + log sum_c exp(z.mu_c/tau)."""
    safe_N, valid_N = _anchors(label_N, class_mask_K, ignore_index)
    sim_NK = _similarity(z_ND, mean_KD, tau)
    pos_N = sim_NK.gather(1, safe_N[:, None]).squeeze(1)
    return _mean(_infonce(pos_N, sim_NK, class_mask_K), valid_N)


def dist_contrast(z_ND: torch.Tensor, label_N: torch.Tensor, mean_KD: torch.Tensor, var_KD: torch.Tensor, *,
                  tau: float, class_mask_K: torch.Tensor | None = None,
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """DistCL: l = -z.mu_y/tau + log sum_c exp(z.mu_c/tau + sum_a z_a^2 var_{c,a} / (2 tau^2)).

    Two [N,D]x[D,K] matmuls (the second on z*z, with a hand-written in-place backward); with var_KD = 0 it is
    ProtoCL."""
    safe_N, valid_N = _anchors(label_N, class_mask_K, ignore_index)
    sim_NK = _similarity(z_ND, mean_KD, tau)
    spread_NK = _SquaredSimilarity.apply(z_ND, var_KD.to(z_ND.dtype))
    spread_NK = spread_NK.to(sim_NK.dtype) / (2.0 * tau * tau)
    pos_N = sim_NK.gather(1, safe_N[:, None]).squeeze(1)
    return _mean(_infonce(pos_N, sim_NK + spread_NK, class_mask_K), valid_N)


def _own_bank_logits(z_ND: torch.Tensor, label_N: torch.Tensor, bank_KMD: torch.Tensor, *, tau: float,
                     chunk: int) -> torch.Tensor:
    """[N, M]: z.b/tau for the M slots of each pixel's own class, chunk pixels at a time via [n, K*M] matmuls."""
    K, M, D = bank_KMD.shape
    keys_LD = bank_KMD.reshape(K * M, D)
    rows = torch.arange(min(chunk, z_ND.shape[0]), device=z_ND.device)
    # advanced indexing, not gather: its backward keeps only the shape, gather's would keep each [n, K*M] block
    parts = [(z_nD @ keys_LD.T).view(-1, K, M)[rows[:len(y_n)], y_n]
             for z_nD, y_n in zip(z_ND.split(chunk), label_N.split(chunk))]
    pos_NM = torch.cat(parts)
    return pos_NM.to(torch.promote_types(pos_NM.dtype, torch.float32)) / tau


def bank_contrast(z_ND: torch.Tensor, label_N: torch.Tensor, bank_KMD: torch.Tensor, slot_mask_KM: torch.Tensor,
                  *, tau: float, class_mask_K: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX,
                  chunk: int = 4096) -> torch.Tensor:
    """BankCL: each filled slot b of the own class's bank is a positive p_b = z.b/tau against one negative per
    other class, neg_c = mean over the filled slots of bank_c of z.b/tau:
    l = -(1/|B_y|) sum_b log(e^p_b / (e^p_b + sum_{c != y} e^neg_c)).

    Classes with an empty bank count as classes without statistics (no anchors, no negatives). ``chunk``
    pixels share one [chunk, K*M] similarity block."""
    slot_w_KM = slot_mask_KM.to(torch.promote_types(z_ND.dtype, torch.float32))
    size_K = slot_w_KM.sum(1)
    mask_K = size_K > 0 if class_mask_K is None else class_mask_K & (size_K > 0)
    safe_N, valid_N = _anchors(label_N, mask_K, ignore_index)
    bank_mean_KD = (bank_KMD.to(slot_w_KM.dtype) * slot_w_KM[..., None]).sum(1) / size_K.clamp_min(1.0)[:, None]
    neg_NK = _masked(_similarity(z_ND, bank_mean_KD, tau), mask_K)
    neg_NK = neg_NK.scatter(1, safe_N[:, None], torch.finfo(neg_NK.dtype).min)  # the own class is no negative
    log_neg_N = torch.logsumexp(neg_NK, dim=1)
    pos_NM = _own_bank_logits(z_ND, safe_N, bank_KMD.to(z_ND.dtype), tau=tau, chunk=chunk)
    slot_w_NM = slot_w_KM[safe_N]
    loss_N = (F.softplus(log_neg_N[:, None] - pos_NM) * slot_w_NM).sum(1) / slot_w_NM.sum(1).clamp_min(1.0)
    return _mean(loss_N, valid_N)


def contrast_regularizer(z_ND: torch.Tensor, label_N: torch.Tensor, mean_KD: torch.Tensor, *, tau: float,
                         class_mask_K: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Class-balance regulariser on the mean valid embedding zbar: L = -(1/(K ln K)) sum_c log p_c with
    p = softmax_c(zbar.mu_c/tau) over the K classes in the mask. L >= 1, with its minimum 1 at the uniform p.

    Sign, on purpose the opposite of the reference code. The reference (proto_reg, contrastive_loss.py) ADDS
    +sum_c log p_c / (K ln K) to the loss: that is <= -1, maximal at the uniform p and unbounded below, so
    minimising it drives p towards one class -- the collapse a regulariser of this shape exists to prevent.
    The paper's stated aim is "class-discriminative and class-balanced pixel representations" (abstract); a
    derived work that copies the term (cxa9264/CONFETI, issue #6) calls it "a regularization term to avoid
    trivial prototypes" and cites the paper's Eq. 13 for it; and the K ln K normaliser only makes sense as the
    bound -sum_c log p_c >= K ln K of the uniform-seeking sign. (Eq. 13's own typesetting was not available to
    check; if it reads as the code does, the code's sign contradicts the purpose the paper gives it.)
    At the reference's tau = 100 with unit-norm z and means the logits lie in [-0.01, 0.01], so either sign
    is about a constant (+-1) with a tiny gradient there; the sign matters at small tau.
    With fewer than two classes in the mask, or no valid pixel, L is an exact 0 with a graph."""
    _, valid_N = _anchors(label_N, class_mask_K, ignore_index)
    zsum_D = valid_N.to(z_ND.dtype) @ z_ND
    n = valid_N.sum()
    zbar_1D = zsum_D.to(torch.promote_types(zsum_D.dtype, torch.float32))[None] / n.clamp_min(1)
    mask_K = torch.ones(mean_KD.shape[0], dtype=torch.bool, device=z_ND.device) if class_mask_K is None \
        else class_mask_K
    logp_K = torch.log_softmax(_masked(_similarity(zbar_1D, mean_KD, tau), mask_K), dim=1)[0]
    k = mask_K.sum().to(logp_K.dtype)
    reg = -torch.where(mask_K, logp_K, 0.0).sum() / (k * torch.log(k.clamp_min(1.0))).clamp_min(1.0)
    return torch.where((n > 0) & (k > 1), reg, 0.0)

