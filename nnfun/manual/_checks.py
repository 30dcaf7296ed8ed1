"""The argument checks of the reference path: those of `nnfun._checks`, which both paths share
(checks are not gradient math, so a user's mistake reads the same whichever engine runs)."""

from nnfun._checks import (
    check_choice,
    check_dim,
    check_keys,
    check_ndim,
    check_no_params,
    check_padding,
    check_positive,
    check_shape,
    int_tuple,
    reshape_target,
)

__all__ = ["check_choice", "check_dim", "check_keys", "check_ndim", "check_no_params",
           "check_padding", "check_positive", "check_shape", "int_tuple", "reshape_target"]
