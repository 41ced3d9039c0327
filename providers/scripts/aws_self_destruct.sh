# gpurun's self-destruct for an EC2 instance: the on-instance watchdog runs it at the deadline,
# and again while this machine is still up, so a failed attempt is retried.
#
# usage: sh aws_self_destruct.sh   (no arguments)
#
# gpurun launches every instance with InstanceInitiatedShutdownBehavior=terminate, so a shutdown
# from inside it is a termination: the instance and its root volume (DeleteOnTermination) stop
# billing. No AWS credential is put on the instance; none is needed. The DLAMI's login user
# (ubuntu) has passwordless sudo.
sudo shutdown -h now
