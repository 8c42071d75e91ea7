"""joules on Ray: batch jobs on Ray Data, online replicas on Ray Serve (the ``ray`` extra).

Nothing here is imported by ``joules``, its CLI parser or its serving modules: each
entry point imports ``ray`` inside its functions, after ``require("ray", "ray")``
has said which extra is missing.
"""
