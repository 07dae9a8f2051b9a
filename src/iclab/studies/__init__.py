"""The science of each study, together: its analyses, checks, figures and report."""
