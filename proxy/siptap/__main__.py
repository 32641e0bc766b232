from siptap.cli import main

raise SystemExit(main())
