# Privacy has no tables of its own: it works on people.Person / FaceImage and the audit log.
