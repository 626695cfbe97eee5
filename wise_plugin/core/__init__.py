"""What both editors share: module surgery and forward helpers (``modules``), edit rows and the
irrelevant pool (``rows``), checkpoint files (``checkpoint_files``), the restore handle and request
checks (``restore``). ``wise`` and ``lemoe`` import from here and never from each other."""
