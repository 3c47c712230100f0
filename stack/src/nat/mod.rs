//! NAT of guest flows onto host sockets.
