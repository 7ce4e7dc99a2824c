"""Class priors for semi-unsupervised learning (Willetts et al. sec 6.1, eq. 34-35)."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UserError


def semi_unsupervised_prior(
    num_classes: int, visible_classes: Sequence[int], num_gt_classes: int
) -> tuple[float, ...]:
    """p(y) when some classes are never labelled and extra classes are added.

    ``|y| = num_classes = N_gt + N_aug``. Each of the ``N_gt - N_mask`` classes that have
    labels (``visible_classes``) gets ``1 / N_gt`` (eq. 34): the ground-truth classes are
    taken to be equally frequent. The mass they leave, ``N_mask / N_gt``, is divided
    evenly between the ``N_mask`` masked ground-truth classes and the ``N_aug`` added
    classes (sec 6.1), i.e. each gets ``N_mask / (N_gt (N_aug + N_mask))``.

    Eq. 35 as printed, ``(|y| + N_gt - N_aug - N_mask) / (N_gt (N_aug + N_mask))``, does
    not sum to 1 (it gives 0.15 instead of 0.05 per class in the paper's own setting
    N_gt = 10, N_aug = N_mask = 5); this function follows the text of sec 6.1, which
    eq. 35 is meant to state.

    Args:
        num_classes: ``|y|``, the model's number of classes.
        visible_classes: ids of the classes that have labels in the training data.
        num_gt_classes: ``N_gt``, the number of ground-truth classes (visible + masked).

    Returns:
        The prior as a tuple of floats, ready for a model config's ``prior`` field.

    Example:
        >>> p = semi_unsupervised_prior(15, visible_classes=range(5, 10), num_gt_classes=10)
        >>> p[5], p[0], p[14]
        (0.1, 0.05, 0.05)
    """
    visible = set(visible_classes)
    n_visible = len(visible)
    if not 0 < num_gt_classes <= num_classes:
        raise UserError(
            f"need 0 < num_gt_classes <= num_classes; got {num_gt_classes}, {num_classes}"
        )
    if any(not 0 <= k < num_gt_classes for k in visible):
        raise UserError(f"visible classes must be ground-truth ids in 0..{num_gt_classes - 1}")
    n_mask = num_gt_classes - n_visible
    n_aug = num_classes - num_gt_classes
    if n_mask + n_aug == 0:
        return tuple(1.0 / num_classes for _ in range(num_classes))
    if n_mask == 0:
        raise UserError(
            "every ground-truth class is visible, so eq. 34 leaves no mass for the "
            f"{n_aug} added classes; use a uniform prior or mask a class"
        )
    hidden = n_mask / (num_gt_classes * (n_aug + n_mask))
    return tuple(1.0 / num_gt_classes if k in visible else hidden for k in range(num_classes))
