"""The short GPU check (``scripts/gpu_check.sh``): its plan, probes and report, in Python.

``python -m fps_profile.gpucheck prepare|measure|report`` are the steps the script runs;
``--dry-run`` runs the same steps on the CPU against ``sim:cpu``.
"""
