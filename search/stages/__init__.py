"""The stages of a run: the searches, the final distillation, fidelity checks, one student's distillation."""
