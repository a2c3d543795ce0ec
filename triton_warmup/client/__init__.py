"""The command-line tools: warm (``warm``), report states (``states``) and
check plan files (``plan_file``), with the flags they share (``flags``)."""
