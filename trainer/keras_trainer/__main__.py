from keras_trainer.cli import main

raise SystemExit(main())
