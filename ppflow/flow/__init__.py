"""Flow matching: the linear path, stage-stratified time sampling and the velocity loss."""

from .loss import LossOutput, drop_labels, flow_matching_loss
from .path import PathSample, linear_path, velocity_to_data
from .time_sampling import DENSITIES, MODES, TimeSample, allocate, sample_interval, sample_times, stage_shares

__all__ = [
    "DENSITIES",
    "MODES",
    "LossOutput",
    "PathSample",
    "TimeSample",
    "allocate",
    "drop_labels",
    "flow_matching_loss",
    "linear_path",
    "sample_interval",
    "sample_times",
    "stage_shares",
    "velocity_to_data",
]
