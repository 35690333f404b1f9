"""VM tier: Debian's kernel under QEMU (virtme-ng) with two strongSwan gateways; see README.md here."""
