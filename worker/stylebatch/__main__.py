from stylebatch.cli import main

raise SystemExit(main())
