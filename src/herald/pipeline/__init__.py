"""The send pipeline, one module per stage (render: what to send, tracking: signed links).
A stage takes typed input, returns typed output, and never reaches back up the chain."""
