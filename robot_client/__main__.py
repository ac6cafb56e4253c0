from robot_client.cli import main

raise SystemExit(main())
