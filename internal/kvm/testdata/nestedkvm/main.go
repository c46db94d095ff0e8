// Command init is PID 1 of a throw-away Linux VM (QEMU TCG, nested SVM)
// that gives internal/kvm's tests a real /dev/kvm on machines without one:
// it mounts devtmpfs, proc, sys and tmpfs, loads irqbypass, ccp, kvm and
// kvm-amd from /mods, runs /kvm.test with the arguments in /args and
// LIVEMIG_REQUIRE_KVM=1, prints KVMTEST-EXIT and powers off. See README.
package main

import (
	"fmt"
	"os"
	"os/exec"

	"golang.org/x/sys/unix"
)

func main() {
	must := func(err error, what string) {
		if err != nil {
			fmt.Println("init:", what, err)
		}
	}
	os.MkdirAll("/dev", 0o755)
	os.MkdirAll("/proc", 0o755)
	os.MkdirAll("/sys", 0o755)
	os.MkdirAll("/tmp", 0o1777)
	must(unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""), "mount dev")
	must(unix.Mount("proc", "/proc", "proc", 0, ""), "mount proc")
	must(unix.Mount("sysfs", "/sys", "sysfs", 0, ""), "mount sys")
	must(unix.Mount("tmpfs", "/tmp", "tmpfs", 0, ""), "mount tmp")
	for _, m := range []string{"irqbypass", "ccp", "kvm", "kvm-amd"} {
		f, err := os.Open("/mods/" + m + ".ko")
		must(err, m)
		if err == nil {
			must(unix.FinitModule(int(f.Fd()), "", 0), "load "+m)
			f.Close()
		}
	}
	args := append([]string{}, os.Args[1:]...)
	if b, err := os.ReadFile("/args"); err == nil {
		args = append(args, splitFields(string(b))...)
	}
	cmd := exec.Command("/kvm.test", args...)
	cmd.Env = append(os.Environ(), "LIVEMIG_REQUIRE_KVM=1", "TMPDIR=/tmp", "HOME=/tmp")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	cmd.Dir = "/"
	err := cmd.Run()
	fmt.Println("KVMTEST-EXIT:", err)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func splitFields(s string) []string {
	var out []string
	cur := ""
	for _, c := range s {
		if c == ' ' || c == '\n' {
			if cur != "" {
				out = append(out, cur)
			}
			cur = ""
			continue
		}
		cur += string(c)
	}
	if cur != "" {
		out = append(out, cur)
	}
	return out
}
