#!/bin/bash
# Train one polymodal model on 2 nodes x 4 GPUs with SLURM: `sbatch examples/slurm_fit.sh TABLE LABEL OUTPUT`.
#
# SLURM starts one task per GPU (--ntasks-per-node = --gpus-per-node); Lightning reads SLURM_PROCID,
# SLURM_LOCALID, SLURM_NODEID and the node list itself, so no torchrun and no rendezvous address are needed.
# Only rank 0 writes OUTPUT (atomically), so OUTPUT must be on a filesystem every node sees, and so must TABLE and
# the media files it names. train.batch_size is the global batch: each of the 8 processes takes 1/8 of it.
#
# Adapt the partition, time, GPU count (change --ntasks-per-node and --gpus-per-node together) and the
# environment activation to your cluster.
#SBATCH --job-name=polymodal-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=polymodal-fit-%j.out

set -euo pipefail
TABLE=${1:?usage: sbatch examples/slurm_fit.sh TABLE LABEL OUTPUT}
LABEL=${2:?usage: sbatch examples/slurm_fit.sh TABLE LABEL OUTPUT}
OUTPUT=${3:?usage: sbatch examples/slurm_fit.sh TABLE LABEL OUTPUT}

# source /path/to/venv/bin/activate   # the environment with polymodal installed, the same on every node

# DataLoader workers decode media; keep their threads from oversubscribing the task's CPUs.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

srun python -m polymodal fit "$TABLE" --label "$LABEL" -o "$OUTPUT" \
  --set train.strategy=ddp \
  --set train.accelerator=gpu \
  --set train.num_nodes="$SLURM_NNODES" \
  --set train.devices="$SLURM_NTASKS_PER_NODE" \
  --set train.num_workers=$((SLURM_CPUS_PER_TASK - 1)) \
  --set data.streaming=auto
