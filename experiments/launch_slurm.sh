#!/usr/bin/env bash
# Multi-host GPU training under SLURM: one process per node, all GPUs of the node.
# jax.distributed.initialize() reads the SLURM environment itself.
#
#   sbatch --nodes=2 --gres=gpu:8 --ntasks-per-node=1 experiments/launch_slurm.sh \
#       configs/digits.py /shared/workdirs/digits
#SBATCH --job-name=vision_jax
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120   # SIGTERM two minutes before the time limit: vision_jax saves and exits
set -euo pipefail
CONFIG=${1:?config file}
WORKDIR=${2:?workdir on a filesystem shared by all nodes}
shift 2
srun python -m vision_jax.main --config="${CONFIG}" --workdir="${WORKDIR}" "$@"
