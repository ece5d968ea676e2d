"""``fedmq``: the operator's admin tool (init, enroll, revoke, status, export, render-broker).

It needs no torch, except ``init --model`` (the initial snapshot is made from your ``nn.Module``).
"""
