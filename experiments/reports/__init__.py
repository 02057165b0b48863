"""Tables and plots of the studies, one module per study (runs: experiments/<study>.py)."""
