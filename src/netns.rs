//! Entering the container network namespace and opening the tap.
