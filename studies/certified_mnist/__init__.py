"""Certified robustness on MNIST (issue 42): the reference numbers from the SmoothMix authors'
released logs (``reference``) and the page comparing smoothinf's runs with them (``page``)."""
