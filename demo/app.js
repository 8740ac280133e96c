// demo client: written in issue 4
