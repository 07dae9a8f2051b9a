"""The task-diversity study (Raventos et al. 2023): the CPU demo and its regime checks, the
threshold M* and its criteria, the figures and the reproduction report."""
