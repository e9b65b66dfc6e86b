"""``python -m clipguard`` runs the command line."""
from clipguard.cli import main

if __name__ == "__main__":
    main()
