// Command htpasswd writes one bcrypt htpasswd line ("user:$2y$..."), the format the
// distribution registry's htpasswd auth reads. It replaces Apache's htpasswd so a
// fresh machine needs no extra package: bcrypt comes from golang.org/x/crypto,
// which the registry itself uses to check the same file. The cost is bcrypt's minimum:
// the registry checks the hash on every request, and these are test passwords.
//
// Usage: htpasswd USER < password
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" {
		fmt.Fprintln(os.Stderr, "usage: htpasswd USER < password")
		os.Exit(2)
	}
	password, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && password == "" {
		fmt.Fprintln(os.Stderr, "htpasswd: no password on standard input")
		os.Exit(2)
	}
	password = strings.TrimRight(password, "\r\n")
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		fmt.Fprintln(os.Stderr, "htpasswd:", err)
		os.Exit(1)
	}
	fmt.Printf("%s:%s\n", os.Args[1], hash)
}
