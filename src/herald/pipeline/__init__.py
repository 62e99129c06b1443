"""The send pipeline, one module per stage: render (what) ... Stages take typed input and return typed output; a stage never reaches back up the chain."""
