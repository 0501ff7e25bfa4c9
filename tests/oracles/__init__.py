"""Reference implementations ("oracles") that tests compare trtkit's output against."""
