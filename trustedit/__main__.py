from trustedit.cli import main

raise SystemExit(main())
