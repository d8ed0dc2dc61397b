"""How workers get started: on this machine (processes), as Slurm array jobs (slurm), as NGC batch jobs (ngc)."""
