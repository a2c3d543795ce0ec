"""Not Python code for Triton: this file makes the helper's folder the
``triton_warmup.helper_model`` package data that ``triton-warmup-install-helper``
copies into a repository. Triton reads only config.pbtxt and 1/ here."""
