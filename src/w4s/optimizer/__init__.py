"""The W4S optimizer: the meta-agent writes, repairs and improves workflows turn by turn."""
